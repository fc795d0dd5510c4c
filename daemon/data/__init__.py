"""Data files shipped with the daemon: the model catalogue and the remote fetch program."""
