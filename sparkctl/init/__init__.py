"""`sparkctl init`: from fresh Sparks to a written, checked inventory (and a playbook).

hostkeys.py   first contact: each host's key, its fingerprint, consent, known_hosts
discover.py   facts through `check`'s own gathering, and what they say about each node's fabric
fabric_fix.py the fabric configuration that fixes what is missing (subnets, netplan YAML, ip commands)
apply.py      applies that configuration to the fabric interfaces only, verifies, rolls back
write_inventory.py  the commented inventory, written without clobbering
playbook_wizard.py  `init --playbook`: TP, layout and memory settings from the weights' size
flow.py       the command's steps in order
"""
