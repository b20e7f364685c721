"""Schemathesis hooks for .ci/schemathesis.sh (named in schemathesis.toml).

A queued acquire waits up to `wait_seconds` (0 to 3600) for its turn: that
is the feature, and stateful runs that take a lock and then queue behind it
would wait that long, past the client's timeout. Generated waits within the
range are cut to a fifth of a second, which still exercises the waiting
path; values outside the range are left alone, so they are still refused.
"""

import schemathesis

LONGEST_WAIT = 0.2


@schemathesis.hook.apply_to(operation_id="acquire_lock")
def map_body(context, body):
    if isinstance(body, dict):
        wait = body.get("wait_seconds")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 0 <= wait <= 3600:
            body["wait_seconds"] = min(wait, LONGEST_WAIT)
    return body
