"""The result objects: the contract between the core and every output format.

Each command builds one of these; ``render.json_output`` serializes it field by field and
``render.screen`` shows the fields marked with a table label, so the JSON and the table
cannot disagree. Nothing here computes: the core fills in every number.
"""
