"""The JSONL contract and what carries records: reading and writing them, progress events, the manifest, and a job's output files (--output, --resume, --shard)."""
