"""One module per training stage (pt, sft, rm, dpo), each readable top to bottom: setup → train → save."""
