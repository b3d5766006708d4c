"""What turns records or texts into results with a model: the in-process generation loop, a server,
a seq2seq model, and the one interface translate and summarize use."""
