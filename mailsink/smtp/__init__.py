"""The SMTP side: aiosmtpd protocol subclass, the one handler, listeners and transcripts."""
