"""AIWM realtime: the portal socket channel (chat, operator commands) and its pure dialect logic."""
