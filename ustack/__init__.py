"""ustack: a user-space TCP/IP stack over a Linux TUN device."""
