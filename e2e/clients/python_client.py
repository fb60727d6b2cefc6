"""A Python analytics SDK making the six calls of drive.mjs's script against DATA_PLANE_URL with
WRITE_KEY; run by drive.mjs. SDK=rudder is RudderStack's rudder-sdk-python, SDK=segment is
Segment's segment-analytics-python (both pinned in requirements.txt). RudderStack's SDK is a
fork of Segment's: the client and its calls have the same signatures."""

import json
import os
import sys


def main() -> int:
    sdk = os.environ["SDK"]
    if sdk == "rudder":
        from rudderstack.analytics import Client
    elif sdk == "segment":
        from segment.analytics import Client
    else:
        print(f"python_client.py: unknown SDK {sdk!r} (rudder or segment)", file=sys.stderr)
        return 2
    s = json.loads(os.environ["SCRIPT"])
    errors = []
    client = Client(
        write_key=os.environ["WRITE_KEY"],
        host=os.environ["DATA_PLANE_URL"],
        upload_size=3,
        upload_interval=0.2,
        max_retries=6,
        on_error=lambda e, batch: errors.append(str(e)),
    )
    user = s["user"]
    client.identify(user, s["traits"])
    client.track(user, s["track"]["event"], s["track"]["properties"])
    client.page(user, s["page"]["category"], s["page"]["name"], s["page"]["properties"])
    client.screen(user, s["screen"]["category"], s["screen"]["name"], s["screen"]["properties"])
    client.group(user, s["group"]["id"], s["group"]["traits"])
    client.alias(s["previousId"], user)
    client.shutdown()
    if errors:
        # A delivery answered 503 and then sent again is expected; drive.mjs checks delivery.
        print(f"python_client.py ({sdk}): the SDK reported {len(errors)} failed attempt(s): {errors[:3]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
