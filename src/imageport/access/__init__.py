"""Who is calling (Keystone token, trusted proxy, noauth), what they may do, and their quotas."""
