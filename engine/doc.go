// Package engine is eidefs's database: identities, signed content-addressed entries,
// the Merkle DAG of each database, the Doc CRDT behind every DocStore, transactions,
// authorization and change events. It keeps the merged state of every store
// materialised in kv, so reads never replay history, and applies foreign entries
// (from sync) in any order.
//
// It must not know about FUSE or the network: fs/ and netsync/ build on it, and it is
// usable and tested on its own, mostly in memory.
package engine
