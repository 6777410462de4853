"""Perf levers, one file each, named after the config key that turns it on: sdpa_varlen (`flash_attn:
sdpa_varlen`), fused_lora, fused_rms_norm, use_v1_kernels, cpu_allocator_cache. runtime/perf/ decides
which a run gets; these implement them."""
