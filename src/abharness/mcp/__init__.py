"""`abharness mcp`: a Model Context Protocol server over stdio (SPEC §15).

A front end beside `cli/`: it uses `run/`, `store/` and `report/`, never another front
end. `server.build_server` declares the tools, each a thin call into the library;
`command` is its click command, which `abharness.entry` adds to the `abharness` group.
Nothing heavy is imported until the command runs.
"""
