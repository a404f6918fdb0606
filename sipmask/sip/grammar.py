"""The SIP grammar (RFC 3261 §25.1, RFC 3966 for tel:) as regular-expression text.

Every pattern the SIP layer matches is built here, from the pieces below, in the manner of
h11's `_abnf.py`: each rule is a `str` named after its ABNF rule (`-` as `_`, upper case),
larger rules are concatenations of smaller ones, and the modules that match them
(`uri.py`, `headers.py`, `message.py`, `parser.py`) only compile what they take from here.
So a rule (a port, a host, a parameter) has one definition, and the Request-URI, From, To,
Contact, Route and Via all read it alike.

Where sipmask accepts more than the ABNF, the rule says so under "leniency", with the
reason; the deviation lives here once, so every path applies it alike.

Whitespace is SP and HTAB only (RFC 5234 WSP). Header values reach these rules with folding
undone (§7.3.1: a line break and the whitespace after it read as one SP), so LWS is 1*WSP;
no other character (FF, VT, NBSP, Unicode spaces) is whitespace anywhere.

Repetitions are possessive (`++`, `*+`, `?+`) wherever nothing after them could need a
character back: the language is the same and `re` keeps no backtracking points. Rules that
hold named groups (SIP_URI, NAME_ADDR, ADDR_SPEC, VIA_PARM, ...) appear at most once in a
compiled pattern.
"""

from __future__ import annotations

import re

# -- basic rules (§25.1) ---------------------------------------------------------------------
# WSP = SP / HTAB; LWS = [*WSP CRLF] 1*WSP (unfolded: 1*WSP); SWS = [LWS].
WSP = r"[ \t]"
LWS = WSP + "++"
SWS = WSP + "*+"
# SEMI = SWS ";" SWS, EQUAL = SWS "=" SWS, SLASH = SWS "/" SWS, COLON = SWS ":" SWS,
# LAQUOT = SWS "<", RAQUOT = ">" SWS.
SEMI = SWS + ";" + SWS
EQUAL = SWS + "=" + SWS
SLASH = SWS + "/" + SWS
COLON = SWS + ":" + SWS
LAQUOT = SWS + "<"
RAQUOT = ">" + SWS

# Characters no URI holds (§19.1.1, §25.1): controls (CTL), SP, and the delimiters of the
# text around a URI, `<`, `>` and DQUOTE. Used inside `[^...]` classes below.
_NOT_IN_URI = r'\x00-\x20\x7f<>"'

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHAR = r"[A-Za-z0-9\-.!%*_+`'~]"
TOKEN = TOKEN_CHAR + "++"
# Method = INVITEm / ACKm / ... / extension-method; extension-method = token
METHOD = TOKEN

# quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE; quoted-pair = "\" CHAR.
# Leniency: qdtext is any character but DQUOTE and "\" (the ABNF leaves controls out; RFC
# 4475 §3.1.1.2 intmeth sends them escaped, trunks now and then raw). The leading SWS is the
# caller's.
QUOTED_STRING = r'"(?:[^"\\]++|\\[\s\S])*+"'
# One quoted-pair, the quoted character in a group (to undo it).
QUOTED_PAIR = r"\\([\s\S])"

# display-name = *(token LWS) / quoted-string.
# Leniency: the words may hold UTF-8 (CN trunks send names unquoted), never an ASCII
# separator such as `,` (RFC 4475 §3.1.2.15 baddn).
DISPLAY_WORD = r"[A-Za-z0-9\-.!%*_+`'~\x80-\U0010ffff]++"
DISPLAY_TOKENS = DISPLAY_WORD + "(?:" + LWS + DISPLAY_WORD + ")*+"
DISPLAY_NAME = "(?:" + DISPLAY_TOKENS + "|" + QUOTED_STRING + ")"

# -- host and port (§25.1) -------------------------------------------------------------------
# host = hostname / IPv4address / IPv6reference.
# Leniency: a hostname is any run of letters, digits, "-", "." and "_" (trunks' DNS names
# hold "_"); label shape is not checked. An IPv4address is such a run too.
HOSTNAME = r"[A-Za-z0-9\-._]++"
# The ABNF's hostname as written, for a name sipmask is configured with and looks up (a
# trunk, RFC 3263): hostname = *( domainlabel "." ) toplabel [ "." ]; domainlabel =
# alphanum / alphanum *( alphanum / "-" ) alphanum. The toplabel's leading ALPHA is not
# asked for, so a dotted IPv4 address passes too.
DOMAINLABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
STRICT_HOSTNAME = "(?:" + DOMAINLABEL + r"\.)*" + DOMAINLABEL + r"\.?"
IPV6_REFERENCE = r"\[[0-9A-Fa-f:.]++\]"
HOST = "(?:" + HOSTNAME + "|" + IPV6_REFERENCE + ")"
# port = 1*DIGIT, held to what a port can name: its value 1-65535 (leading zeros allowed:
# `05060` is 5060). The shortest numbers come first; the match must end where the digits
# do, so a five-digit number passes the first alternative and takes the one of its range.
PORT = (r"0*+(?:[1-9][0-9]{0,3}+|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
        r"|655[0-2][0-9]|6553[0-5])(?![0-9])")

# -- sip: and sips: URIs (§19.1.1, §25.1) ----------------------------------------------------
# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ] (sips: alike); the
# scheme is case-insensitive (§19.1.4).
SIP_SCHEME = r"[sS][iI][pP][sS]?+"
# userinfo = ( user / telephone-subscriber ) [ ":" password ] "@"
# Leniency: user is any character a URI holds but "@" and ":" (the ABNF's unreserved,
# escaped and user-unreserved, plus what trunks send unescaped, such as `#` in `*21#`);
# password any but "@". The user part ends at the only "@" (RFC 4475 §3.1.1.2 intmeth puts
# `?`, `;` and `/` in it, §3.1.1.9 semiuri `;`).
USER = rf"[^{_NOT_IN_URI}@:]++"
PASSWORD = rf"[^{_NOT_IN_URI}@]*+"
# uri-parameter = pname [ "=" pvalue ] (transport-param, user-param, ... are all of this
# shape). Leniency: pname is any URI character but ";", "=", ",", "?" and "@"; pvalue any
# but ";", "?" and "@", and may be empty (`;a=`). No "@" outside the user part: where it
# ends is never in doubt.
URI_PNAME = rf"[^{_NOT_IN_URI};=,?@]++"
URI_PVALUE = rf"[^{_NOT_IN_URI};?@]*+"
URI_PARAMETERS = "(?:;" + URI_PNAME + "(?:=" + URI_PVALUE + ")?+)*+"
# headers = "?" header *( "&" header ). Leniency: kept as one run of URI characters; its
# pairs are split when read (SipUri.header_pairs).
URI_HEADERS = rf"[^{_NOT_IN_URI}]*+"
# (userinfo is possessive: USER and PASSWORD hold no "@", so once it matched, neither a
# shorter userinfo nor none could let the host match instead.)
SIP_URI = (
    "(?P<scheme>" + SIP_SCHEME + "):"
    "(?:(?P<user>" + USER + ")(?::(?P<password>" + PASSWORD + "))?+@)?+"
    "(?P<host>" + HOST + ")(?::(?P<port>" + PORT + "))?+"
    "(?P<uri_params>" + URI_PARAMETERS + ")"
    r"(?:\?(?P<uri_headers>" + URI_HEADERS + "))?+"
)

# -- other URIs ------------------------------------------------------------------------------
# absoluteURI = scheme ":" ( hier-part / opaque-part ) (RFC 2396); scheme = ALPHA
# *( ALPHA / DIGIT / "+" / "-" / "." ). Leniency: the rest is any run of URI characters.
SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*+"
ABSOLUTE_URI = SCHEME + rf":[^{_NOT_IN_URI}]++"
# RFC 3966 telephone-subscriber = global-number / local-number. Leniency: one run of the
# characters both use (digits, hex digits of local numbers, `*`, `#`, visual separators)
# holding at least one digit, an optional leading "+". Parameters as a sip: URI's.
TEL_SCHEME = r"[tT][eE][lL]"
TELEPHONE_SUBSCRIBER = r"\+?+[A-Fa-f*#\-.()]*+[0-9][0-9A-Fa-f*#\-.()]*+"
TEL_URI = (TEL_SCHEME + ":(?P<number>" + TELEPHONE_SUBSCRIBER + ")"
           "(?P<uri_params>" + URI_PARAMETERS + ")")
# Any other absoluteURI: not sip:, sips: or tel:, which have their own rules above.
OTHER_URI = "(?!" + SIP_SCHEME + ":|" + TEL_SCHEME + ":)" + ABSOLUTE_URI

# -- header parameters (§25.1 generic-param) -------------------------------------------------
# generic-param = token [ EQUAL gen-value ]; gen-value = token / host / quoted-string.
# Leniency: a name is any visible character but ";", "=", ",", "?", "@", "<", ">" and
# DQUOTE; an unquoted value any visible character but ";", ",", "<", ">" and DQUOTE (so
# `=`, `@`, `/` and UTF-8 pass), and it may be empty (`;a=`). A value holding the others
# is quoted, as RFC 5626's `+sip.instance="<urn:...>"` is.
GEN_PNAME = r'[^\x00-\x20\x7f;=,?@<>"]++'
_UNQUOTED = r'[^\x00-\x20\x7f;,<>"]'
GEN_VALUE = "(?:" + _UNQUOTED + "++|" + QUOTED_STRING + ")"
# (The value, which may be empty, as one alternation: the same language in fewer steps.)
GENERIC_PARAM = GEN_PNAME + "(?:" + EQUAL + "(?:" + QUOTED_STRING + "|" + _UNQUOTED + "*+))?+"
# *( SEMI generic-param ): the parameters after a name-addr or a Via's sent-by.
GENERIC_PARAMS = "(?:" + SEMI + GENERIC_PARAM + ")*+"
# One parameter of a run GENERIC_PARAMS (URI_PARAMETERS) matched, in three groups for
# `findall`: its name, "=" or "" (a flag parameter has none), and its value.
GENERIC_PARAM_PARTS = (SEMI + "(" + GEN_PNAME + ")(?:" + SWS + "(=)" + SWS + "("
                       + GEN_VALUE + "?+))?+")
# The same in canonical form (what str() writes: no LWS), which values keep their
# parameters in.
CANONICAL_PARAM_PARTS = ";(" + GEN_PNAME + ")(?:(=)(" + GEN_VALUE + "?+))?+"
URI_PARAMETER_PARTS = ";(" + URI_PNAME + ")(?:(=)(" + URI_PVALUE + "))?+"


def named_param(name: str, *, uri: bool = False) -> str:
    """The rule that finds the first parameter called `name` (any case) in a run of
    parameters in canonical form (header parameters, or uri-parameters when `uri`): the
    parameters before it are passed over whole (a quoted value may hold ";"), and its
    value is the one group (None for a flag parameter). Used with `match`."""
    pname, value = (URI_PNAME, URI_PVALUE) if uri else (GEN_PNAME, GEN_VALUE + "?+")
    spelled = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c)
                      for c in name)
    return ("(?:;" + pname + "(?:=" + value + ")?+)*?;" + spelled + "(?:=(" + value
            + "))?+(?![^;])")


def found_param(name: str, *, uri: bool = False) -> str:
    """named_param for a run of parameters in canonical form that holds no DQUOTE (every
    uri-parameters run, most header parameters): there every ";" starts a parameter (no
    pname or unquoted value holds one), so the first ";name" followed by "=", ";" or the
    end is that parameter, and a `search` finds it without passing over the others (the
    same answer, in half the steps). Used with `search`."""
    value = URI_PVALUE if uri else _UNQUOTED + "*+"
    spelled = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c)
                      for c in name)
    return ";" + spelled + "(?:=(" + value + "))?+(?![^;])"

# -- name-addr and addr-spec (§20.10, §25.1) -------------------------------------------------
# name-addr = [ display-name ] LAQUOT addr-spec RAQUOT; addr-spec = SIP-URI / SIPS-URI /
# absoluteURI. The URI inside <> is either a sip: URI, read in place, or another URI
# (`absolute`: a tel: URI or any other absoluteURI, each by its rule), which the caller
# builds from its text.
NAME_ADDR = (
    SWS + "(?:(?P<display>" + DISPLAY_NAME + "))?+" + LAQUOT
    + "(?:" + SIP_URI + "|(?P<absolute>" + TEL_SCHEME + ":" + TELEPHONE_SUBSCRIBER
    + URI_PARAMETERS + "|" + OTHER_URI + "))"
    + RAQUOT + "(?P<params>" + GENERIC_PARAMS + ")" + SWS
)
# §20.10: an addr-spec outside <> whose URI holds ",", "?" or ";" is not allowed; the
# first ";" starts the header's parameters. So a bare URI is a sip: URI without those
# characters, parameters or headers, or another URI without them.
_BARE = ",;?"
ADDR_SPEC = (
    SWS + "(?:(?P<scheme>" + SIP_SCHEME + "):"
    "(?:(?P<user>" + rf"[^{_NOT_IN_URI}@:{_BARE}]++" + ")"
    "(?::(?P<password>" + rf"[^{_NOT_IN_URI}@{_BARE}]*+" + "))?+@)?+"
    "(?P<host>" + HOST + ")(?::(?P<port>" + PORT + "))?+"
    "|(?P<absolute>" + TEL_SCHEME + ":" + TELEPHONE_SUBSCRIBER + "|(?!" + SIP_SCHEME + ":|"
    + TEL_SCHEME + ":)" + SCHEME + rf":[^{_NOT_IN_URI}{_BARE}]++" + "))"
    "(?P<params>" + GENERIC_PARAMS + ")" + SWS
)

# -- Via (§20.42) ----------------------------------------------------------------------------
# via-parm = sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol = protocol-name SLASH protocol-version SLASH transport (each a token, or
# "SIP" / "UDP" ...); sent-by = host [ COLON port ]; via-params are generic-params.
SENT_PROTOCOL = ("(?P<protocol_name>" + TOKEN + ")" + SLASH + "(?P<protocol_version>" + TOKEN
                 + ")" + SLASH + "(?P<transport>" + TOKEN + ")")
SENT_BY = "(?P<host>" + HOST + ")(?:" + COLON + "(?P<port>" + PORT + "))?+"
VIA_PARM = SWS + SENT_PROTOCOL + LWS + SENT_BY + "(?P<params>" + GENERIC_PARAMS + ")" + SWS

# -- CSeq (§20.16) ---------------------------------------------------------------------------
# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method. The number must be below 2**31 (§8.1.1.5): ten
# digits at most here, the value is the caller's to check.
CSEQ = SWS + "(?P<number>[0-9]{1,10}+)" + LWS + "(?P<method>" + METHOD + ")" + SWS

# -- header lines (§7.3) ---------------------------------------------------------------------
# message-header = field-name HCOLON field-value; HCOLON = *( SP / HTAB ) ":" SWS. The
# parser splits a line at its first ":"; what comes before is a token and the WSP of HCOLON.
FIELD_NAME = TOKEN
