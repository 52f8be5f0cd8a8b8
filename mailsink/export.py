"""Export stored messages as .eml files, an mbox file or a Maildir, bytes unchanged."""

from __future__ import annotations

import mailbox
import time
from pathlib import Path

from mailsink.store.queries import Reader


class ExportError(Exception):
    """Nothing was exported; the message says why."""


def export_messages(reader: Reader, ids: list[int], fmt: str, out: Path) -> int:
    """Write the messages (all accepted ones if `ids` is empty); returns how many."""
    if ids:
        chosen = [(message_id, reader.get_message(message_id)) for message_id in ids]
    else:
        chosen = [(r.id, r) for r in reversed(reader.list_messages(limit=2**62))]
    records = []
    for message_id, record in chosen:
        raw = reader.get_raw(message_id)
        if record is None or raw is None:
            raise ExportError(f"no message {message_id}; nothing exported")
        records.append((record, raw))
    try:
        if fmt == "eml":
            out.mkdir(parents=True, exist_ok=True)
            for record, raw in records:
                (out / f"{record.id}.eml").write_bytes(raw)
        elif fmt == "mbox":
            if out.is_dir():
                raise ExportError(f"{out} is a directory; mbox needs a file path")
            box = mailbox.mbox(out)
            try:
                box.lock()
                for record, raw in records:
                    entry = mailbox.mboxMessage(raw)
                    # The mbox "From " line carries the envelope sender, as a local delivery would.
                    entry.set_from(
                        record.envelope.mail_from or "MAILER-DAEMON",
                        time.gmtime(record.received_at / 1000),
                    )
                    box.add(entry)
                box.flush()
            finally:
                box.unlock()
                box.close()
        else:
            box = mailbox.Maildir(out, create=True)
            for _record, raw in records:
                box.add(mailbox.MaildirMessage(raw))
            box.close()
    except OSError as error:
        raise ExportError(f"cannot write {out}: {error.strerror or error}") from None
    return len(records)
