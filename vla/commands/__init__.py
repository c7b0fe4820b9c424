"""Command-line commands that join the core library with the apps (vla.serving, vla.finetune).

The one place besides the dispatcher (vla/cli.py) allowed to import the apps: a library module
takes what it needs from an app as an argument, and the command passes it in.
"""
