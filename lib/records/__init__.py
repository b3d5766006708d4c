"""The JSONL contract and what carries records: reading and writing them, a tool running over
stdin, progress events, the manifest, and a job's output files (--output, --resume, --shard)."""
