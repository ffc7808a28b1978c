package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/netsync"
)

// TestHostilePeerIsCut attacks a running node from the test process: broken
// frames from fresh keys and from a peer's own key (read from its data dir). Each
// connection is closed; the metrics count the violations, `peer list` counts the
// peer's, and the node still syncs with that peer.
func TestHostilePeerIsCut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metrics := ln.Addr().String()
	ln.Close()
	a := newSyncNode(t, "a", syncOpts{Serve: true})
	a.stop(t)
	setConfig(t, a.Data, map[string]string{"metrics_addr": strconv.Quote(metrics)})
	a.start(t)
	b := newSyncNode(t, "b", syncOpts{Serve: true})
	mustCLI(t, a.Data, "db", "create", "notes")
	mustCLI(t, a.Data, "set", "notes", "s", "k", "v1")
	join(t, b, share(t, a, "notes"))

	aKey, err := engine.ParsePublicKey(a.Key())
	if err != nil {
		t.Fatal(err)
	}
	bID, err := engine.LoadIdentity(filepath.Join(b.Data, "device.key"))
	if err != nil {
		t.Fatal(err)
	}
	prefix := func(n uint32, body ...byte) []byte { return append(binary.BigEndian.AppendUint32(nil, n), body...) }
	attacks := []struct {
		name string
		id   *engine.Identity
		send []byte
	}{
		{"undecodable frame, fresh key", engine.NewIdentity(), prefix(4, 0xff, 0xff, 0xff, 0xff)},
		{"1 GiB length prefix, fresh key", engine.NewIdentity(), prefix(1 << 30)},
		{"undecodable frame, b's key", bID, prefix(4, 0xff, 0xff, 0xff, 0xff)},
	}
	for _, at := range attacks {
		tr, err := netsync.NewTransport(netsync.Config{Identity: at.id})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := tr.Dial(ctx, a.Addr, aKey)
		if err != nil {
			t.Fatalf("%s: %v", at.name, err)
		}
		s, err := c.OpenStream(ctx)
		if err != nil {
			t.Fatalf("%s: %v", at.name, err)
		}
		if _, err := s.Write(at.send); err != nil {
			t.Fatalf("%s: %v", at.name, err)
		}
		select {
		case <-c.Done():
		case <-ctx.Done():
			t.Fatalf("%s: the node kept the connection open", at.name)
		}
	}

	got := scrapeMetrics(t, metrics)
	t.Logf("metrics after %d attacks: protocol errors %v, by strangers %v", len(attacks),
		got["eidefs_protocol_errors_total"], got["eidefs_protocol_errors_strangers_total"])
	if got["eidefs_protocol_errors_total"] != 3 || got["eidefs_protocol_errors_strangers_total"] != 2 {
		t.Fatalf("metrics: %v protocol errors, %v by strangers; want 3 and 2",
			got["eidefs_protocol_errors_total"], got["eidefs_protocol_errors_strangers_total"])
	}
	var peers []struct {
		Name           string `json:"name"`
		ProtocolErrors uint64 `json:"protocol_errors"`
	}
	out := mustCLI(t, a.Data, "peer", "list", "--json")
	if err := json.Unmarshal([]byte(out), &peers); err != nil {
		t.Fatalf("peer list --json: %v\n%s", err, out)
	}
	if len(peers) != 1 || peers[0].Name != "b" || peers[0].ProtocolErrors != 1 {
		t.Fatalf("a's peers (strangers must not appear): %s", out)
	}

	mustCLI(t, a.Data, "set", "notes", "s", "k", "v2")
	took := waitFor(t, 20*time.Second, "b to receive a's write", func() (bool, string) {
		out, _, code := cli(t, b.Data, "get", "notes", "s", "k")
		return code == 0 && strings.TrimSpace(out) == "v2", out
	})
	t.Logf("a's write reached b %v after the attacks", took)
}

func scrapeMetrics(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && !strings.HasPrefix(f[0], "#") {
			v, _ := strconv.ParseFloat(f[1], 64)
			out[f[0]] = v
		}
	}
	return out
}
