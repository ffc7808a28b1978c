// Package netsync replicates eidefs databases between nodes over QUIC: peer
// identity (TLS 1.3 certificates self-signed by each node's ed25519 device key,
// pinned), the sync protocol (hello, discover, sync, push, get, bootstrap), the
// background scheduler (push on commit, periodic sync, retries with backoff, health
// checks) and the per-peer sync state that .sync/ shows.
//
// The protocol logic works on any Stream, so it is tested over in-memory pipes; the
// QUIC plumbing is in transport.go. It depends on engine and never on fs.
package netsync
