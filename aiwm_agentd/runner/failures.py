"""Turning a failed turn into a short, honest reply for the chat user (never a credential, never a trace)."""

from __future__ import annotations

from dataclasses import dataclass

FRESH_SESSION_NOTE = "(I could not restore our earlier conversation, so this is a fresh start.)"


@dataclass(frozen=True)
class Failure:
    code: str  # Reply.error
    text: str  # what the user reads


def timeout(seconds: float) -> Failure:
    return Failure("timeout", f"Sorry, that took longer than {seconds:g} seconds, so I stopped. "
                              "Please try again, or ask for something smaller.")


INTERRUPTED = Failure("interrupted", "Stopped.")
SHUTTING_DOWN = Failure("shutting_down", "Sorry, I am restarting right now. Please send that again in a minute.")
# Told (once per conversation) when a stop cuts a turn whose message the inbox keeps for after the restart.
RESTARTING_NOTICE = "I am restarting right now; I will answer this when I am back."
# Told when a message's turn was started too often without an answer (it may be what crashes the agent).
GIVEN_UP_NOTICE = ("Sorry, I tried to answer this several times and each attempt was cut short, so I am giving "
                   "up on it. Please send it again, perhaps asking for something smaller.")
NOT_RUNNING = Failure("not_running", "Sorry, the assistant is not running right now.")
# Refused at once (never queued, never a paid turn): the conversation already holds claude.queue_limit messages.
QUEUE_FULL = Failure("queue_full", "Sorry, too many messages are already waiting in this conversation, so I "
                                   "skipped this one. Please send it again once I have answered the others.")
NO_CREDENTIALS = Failure("no_credentials", "Sorry, I cannot answer: no valid Claude credentials are "
                                           "configured on this agent. Please tell its administrator.")
UNREACHABLE = Failure("unreachable", "Sorry, I cannot reach the Claude API right now. Please try again later.")
CRASHED = Failure("crashed", "Sorry, something went wrong while I was working on that. Please try again.")
CANNOT_START = Failure("cannot_start", "Sorry, I could not start Claude on this machine. "
                                       "Please tell the agent's administrator.")

_NO_CREDENTIALS_MARKERS = ("not logged in", "invalid api key", "authentication_error", "oauth token",
                           "please run /login", "invalid bearer", "invalid x-api-key")
_UNREACHABLE_MARKERS = ("connection refused", "econnrefused", "enotfound", "unable to connect", "fetch failed",
                        "network", "etimedout", "econnreset", "socket", "getaddrinfo", "timed out",
                        "connection error")


def classify(message: str, api_status: int | None = None) -> Failure:
    """From the CLI's error result text (or an exception's text) to what we tell the user."""
    text = message.lower()
    if api_status in (401, 403) or any(m in text for m in _NO_CREDENTIALS_MARKERS):
        return NO_CREDENTIALS
    if any(m in text for m in _UNREACHABLE_MARKERS):
        return UNREACHABLE
    if api_status == 429 or "rate limit" in text or "429" in text:
        return Failure("api_error", "Sorry, the Claude API is rate-limiting this agent. "
                                    "Please try again in a minute.")
    if api_status is not None or "api error" in text or "overloaded" in text:
        status = f" (HTTP {api_status})" if api_status else ""
        return Failure("api_error", f"Sorry, the Claude API returned an error{status}. "
                                    "Please try again in a moment.")
    return CRASHED
