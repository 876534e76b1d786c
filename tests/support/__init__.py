"""What the integration tests and the benchmarks share: the docker CLI on the rig's engines (dockercli), a real API
server (apiserver) and the rig's extra hosts (hosts). Imported as `tests.support.<module>`: the repository's root is
on the path (pytest's `pythonpath`, the benchmarks' own sys.path)."""
