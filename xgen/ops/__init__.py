"""Operating a submitted run: `xgen status`, `xgen logs`, `xgen cancel` (Slurm clients, files; no torch)."""
