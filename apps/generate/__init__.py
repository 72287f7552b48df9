"""``cascade generate``: :mod:`~apps.generate.cli` (flags), :mod:`~apps.generate.run` (one run, in-process
or on every rank), :mod:`~apps.generate.decode_thread` (decoding while later blocks denoise),
:mod:`~apps.generate.writers` (the video and latents, block by block) and
:mod:`~apps.generate.interactive` (prompts typed while streaming)."""
