"""A UAC dialog for the dialog tests (RFC 3261 §12): sipmask's INVITE to the callee, the
callee's responses to it, and the requests the callee sends inside the dialog."""

from __future__ import annotations

from sipmask.sip.dialog import Dialog
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message

INVITE = (
    "INVITE sip:13900000002@127.0.0.1:5090 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKinv1;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: \"X\" <sip:700100000000001@127.0.0.1>;tag=local1\r\n"
    "To: <sip:13900000002@127.0.0.1>\r\n"
    "Call-ID: dlg-1@127.0.0.1\r\n"
    "CSeq: 10 INVITE\r\n"
    "Contact: <sip:sipmask@127.0.0.1:5060>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def parse_request(text: str) -> Request:
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def response_to(req: Request, status: int, *, tag: str | None = "remote1",
                contact: str | None = "<sip:13900000002@127.0.0.8:5090>",
                record_route: tuple[str, ...] = (), extra: str = "") -> Response:
    to = req.headers.get("to") or ""
    if tag is not None:
        to += f";tag={tag}"
    text = (
        f"SIP/2.0 {status} X\r\n"
        + "".join(f"Via: {v}\r\n" for v in
                  req.headers.get_all("via") or ["SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx"])
        + "".join(f"Record-Route: {r}\r\n" for r in record_route)
        + f"From: {req.headers.get('from')}\r\nTo: {to}\r\n"
        f"Call-ID: {req.call_id}\r\nCSeq: {req.headers.get('cseq')}\r\n"
        + (f"Contact: {contact}\r\n" if contact else "")
        + extra + "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


def uac_dialog(status: int = 200, record_route: tuple[str, ...] = (
        "<sip:p2.example;lr>", "<sip:p1.example;lr>")) -> tuple[Request, Dialog]:
    invite = parse_request(INVITE)
    return invite, Dialog.as_uac(invite, response_to(invite, status, record_route=record_route),
                                 local_contact="<sip:sipmask@127.0.0.1:5060>")


def in_dialog_request(method: str, cseq: int, *, contact: str | None = None) -> Request:
    """A request the callee sends us inside the dialog (as UAS of it)."""
    return parse_request(
        f"{method} sip:sipmask@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.8:5090;branch=z9hG4bKin\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:13900000002@127.0.0.1>;tag=remote1\r\n"
        "To: \"X\" <sip:700100000000001@127.0.0.1>;tag=local1\r\n"
        "Call-ID: dlg-1@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        + (f"Contact: {contact}\r\n" if contact else "")
        + "Content-Length: 0\r\n\r\n")
