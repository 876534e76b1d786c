"""deployctl: deploy, roll back and read the history of the webhook API from a terminal or a script."""
