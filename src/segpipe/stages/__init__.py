"""One function per DVC stage; ``pipelines/*.py`` parse arguments and call these."""
