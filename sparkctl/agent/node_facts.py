"""Node facts for `sparkctl check` (runs ON the node, standard library only).

Placeholder until the facts collector lands: gather() must return a dict with
"ok": True and the facts described in node_facts' documentation.
"""


def gather(req):
    return {"ok": False, "error": "facts are not implemented yet", "kind": "not-implemented"}
