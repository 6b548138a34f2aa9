"""net-snmp `pass` script: snmpd runs it for each GET/GETNEXT under a registered sub-tree and
it answers from a JSON file the test writes ({oid: [type, value]}), so the test controls what
a real snmpd serves. Usage (by snmpd): snmp_pass.py VALUES.json -g|-n|-s OID."""

import json
import sys


def key(oid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in oid.strip(".").split("."))


def main() -> None:
    path, op, oid = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    if op == "-g":
        hit = oid.strip(".") if oid.strip(".") in values else None
    elif op == "-n":
        hit = next((o for o in sorted(values, key=key) if key(o) > key(oid)), None)
    else:
        print("not-writable")
        return
    if hit is not None:
        kind, value = values[hit]
        print(f".{hit}\n{kind}\n{value}")


if __name__ == "__main__":
    main()
