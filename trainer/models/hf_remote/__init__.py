"""Code shipped inside a DNAGPT Hugging Face folder (``dnafm export --format hf``), loaded by the user's
``transformers`` with ``trust_remote_code=True``. These files import only torch and transformers: they run
without dnafm installed. ``trainer.models.hf_gpt`` copies them into the folder; nothing in dnafm imports them."""
