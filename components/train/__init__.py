"""The train step: LoRA, QLoRA and full fine-tuning with trl's SFTTrainer (see README.md)."""
