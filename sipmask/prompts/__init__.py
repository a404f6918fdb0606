"""The default announcements (package data, no code): unbound, ext_prompt, recording_notice
and callee_notice as 8 kHz mono 16-bit WAV. scripts/make-prompts makes them; README "Media
services" says how and under what terms."""
