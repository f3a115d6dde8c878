"""Hostile input stops here: format inspector, qemu-img sandbox, URL policy, address pinning."""
