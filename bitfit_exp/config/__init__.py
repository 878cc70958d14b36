"""Configs: the schema every composed config is checked against (`schema`: it knows every registry, so it sits
above them), composing a command line into checked jobs (`compose`) and a sweep's plan (`plan`)."""
