"""ImageNet (the downloaded archives or extracted folders) to sharded WebDataset tar files with
DALI index files and a manifest.

Run as ``python -m prep DATA OUT`` (``make shards``) and ``python -m prep verify OUT``.
Imports nothing of ``train`` or ``models``.
"""
