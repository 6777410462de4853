"""Entry commands other than training: check, export, llama_pro, make-tiny."""
