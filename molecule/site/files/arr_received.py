"""Print the DICOM audit messages the lab's audit record repository received since a time.

Each line of the repository's file is one syslog message as JSON (rsyslog's jsonf
properties); its MSG is a UTF-8 byte order mark and an AuditMessage (DICOM PS3.15 A.5).
The output is one JSON list of what verify compares: event, outcome, participants and
source, for every message whose EventDateTime is at or after the time given. A message
that does not parse is listed with its error, never dropped.
"""

import datetime
import json
import sys
import xml.etree.ElementTree as ET

BOM = "\ufeff"


def summary(root):
    event = root.find("EventIdentification")
    type_code = event.find("EventTypeCode")
    source = root.find("AuditSourceIdentification")
    return {
        "event_id": event.find("EventID").get("csd-code"),
        "event_id_system": event.find("EventID").get("codeSystemName"),
        "type_code": type_code.get("csd-code") if type_code is not None else None,
        "outcome": event.get("EventOutcomeIndicator"),
        "time": event.get("EventDateTime"),
        "description": event.findtext("EventOutcomeDescription"),
        "participants": [dict(p.attrib) for p in root.findall("ActiveParticipant")],
        "source_id": source.get("AuditSourceID") if source is not None else None,
        "site_id": source.get("AuditEnterpriseSiteID") if source is not None else None,
    }


def main(path, since):
    since = datetime.datetime.fromtimestamp(float(since), datetime.timezone.utc)
    out = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            record = json.loads(line)
            msg = record["msg"]
            if not msg.startswith(BOM + "<?xml"):
                raise ValueError("the MSG is not a byte order mark and an XML document")
            item = summary(ET.fromstring(msg[len(BOM):].encode("utf-8")))
            item.update(line=number, pri=record.get("pri"), app_name=record.get("app_name"),
                        msgid=record.get("msgid"), peer=record.get("peer"))
            when = datetime.datetime.fromisoformat(item["time"])
        except (ValueError, KeyError, AttributeError, TypeError, ET.ParseError) as exc:
            out.append({"line": number, "error": str(exc)})
            continue
        if when >= since:
            out.append(item)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
