"""`abharness view`: the results database as a local web app (SPEC §12).

A front end beside `cli/`: it uses `store/` and `report/`, never another front end.
`app.create_app` is the ASGI app; `command` is its click command, which `abharness.entry`
adds to the `abharness` group. Nothing heavy is imported until the command runs.
"""
