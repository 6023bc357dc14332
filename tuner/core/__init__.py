"""tuner.core: what every layer stands on and nothing of tuner's own: errors that name the file, row
and what to do; atomic writes of files and folders; the workspace and its paths; the machine (GPU or
CPU memory, torchrun ranks). Imports no other tuner package."""
