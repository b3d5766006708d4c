"""The engine: everything that turns prepared requests into token events, one loop for every front door.

The generation loop (`loop`: prefill, pick, step) over a model runner (`batching`, `decoding`),
the row policies (`sampling`, `stops`, `constrain`, `thinking`, `speculative`), the one request
preparation every front door goes through (`preparation`), in-process batches (`generation`) and
the server's `scheduler`.

Words, each with one meaning across lmpipe:
- engine: this package, as a whole; no object is called an engine (lm-serve's is a `Scheduler`,
  the dashboard's a `ModelPool` of lmpipe.api Models).
- model runner: what the loop runs the model with (loop.ModelRunner: FastRows, StaticBatch);
  `runner_for` picks one.
- backend: what a task turns its records or texts into results with (lmpipe.backends: the
  in-process loop, a server, a seq2seq model; the TextBackend translate and summarize share).
- scheduler: lm-serve's `Scheduler`, which queues requests and feeds them to the loop as rows.
"""
