"""Scaffolding, not features: hooks only tests use (`testing`) and patches only CPU runs need (`cpu`).

Nothing here changes what a GPU/NPU job does: the test hooks act only when their XGEN_FAULT_* /
XGEN_TEST_* variable is set, and the CPU patches are applied only when the device is cpu.
"""
