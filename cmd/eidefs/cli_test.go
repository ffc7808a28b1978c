package main

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var eidefsBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "eidefs-cli")
	if err != nil {
		panic(err)
	}
	eidefsBin = filepath.Join(dir, "eidefs")
	if out, err := exec.Command("go", "build", "-o", eidefsBin, ".").CombinedOutput(); err != nil {
		panic("building eidefs: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs the built eidefsBin with --data dir and returns stdout, stderr and the exit code.
func run(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(eidefsBin, append([]string{"--data", dir}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

func ok(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, errs, code := run(t, dir, args...)
	if code != 0 {
		t.Fatalf("eidefs %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

func TestCLIWalkthrough(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	out := ok(t, dir, "init")
	if !strings.Contains(out, "device key: ed25519:") {
		t.Fatalf("init: %q", out)
	}
	if fi, err := os.Stat(filepath.Join(dir, keyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("device key: %v %v", fi.Mode(), err)
	}
	id := strings.TrimSpace(ok(t, dir, "db", "create", "notes"))
	if len(id) != 64 {
		t.Fatalf("db create printed %q, want an id", id)
	}
	ok(t, dir, "set", "notes", "todo", "milk", "2 litres")
	if got := ok(t, dir, "get", "notes", "todo", "milk"); got != "2 litres" {
		t.Fatalf("get = %q", got)
	}
	ok(t, dir, "set", "notes", "todo", "shop", "fruit", "apples", "3")
	if got := ok(t, dir, "ls", "notes", "todo"); got != "milk\nshop/\n" {
		t.Fatalf("ls = %q", got)
	}
	if got := ok(t, dir, "get", "notes", "todo", "shop", "fruit", "apples"); got != "3" {
		t.Fatalf("nested get = %q", got)
	}
	ok(t, dir, "rm", "notes", "todo", "milk")
	if _, errs, code := run(t, dir, "get", "notes", "todo", "milk"); code != 1 || !strings.Contains(errs, "not found") {
		t.Fatalf("get removed key: exit %d, %q", code, errs)
	}
	list := ok(t, dir, "db", "list")
	if !strings.Contains(list, "notes") || !strings.Contains(list, id) || !strings.Contains(list, " 4 ") {
		t.Fatalf("db list = %q", list)
	}
	log := strings.Split(strings.TrimSpace(ok(t, dir, "log", "notes")), "\n")
	if len(log) != 4 || !strings.HasSuffix(log[0], " todo") || !strings.HasSuffix(log[3], " _settings") {
		t.Fatalf("log = %q", log)
	}
	// EIDEFS_DATA works in place of --data.
	cmd := exec.Command(eidefsBin, "get", "notes", "todo", "shop", "fruit", "apples")
	cmd.Env = append(os.Environ(), "EIDEFS_DATA="+dir)
	if b, err := cmd.Output(); err != nil || string(b) != "3" {
		t.Fatalf("with EIDEFS_DATA: %q %v", b, err)
	}
}

func TestCLIErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	ok(t, dir, "db", "create", "notes")
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"db", "create", "notes"}, 1, "already exists"},
		{[]string{"get", "nope", "s", "k"}, 1, `no such database "nope"`},
		{[]string{"set", "notes", "_settings", "k", "v"}, 1, "reserved"},
		{[]string{"set", "notes", "s", strings.Repeat("x", 256), "v"}, 1, "name too long"},
		{[]string{"db", "grant", "notes", "ed25519:x", "sudo"}, 2, "bad permission"},
		{[]string{"get", "notes"}, 1, "requires at least 3 arg"},
	}
	for _, c := range cases {
		_, errs, code := run(t, dir, c.args...)
		if code != c.code || !strings.Contains(errs, c.msg) {
			t.Errorf("eidefs %s: exit %d %q, want exit %d with %q", strings.Join(c.args, " "), code, errs, c.code, c.msg)
		}
	}
}

func TestCLIDataDirInUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	ok(t, dir, "init")
	// Hold the store open from this process, as a running mount would.
	g := &globals{data: dir}
	n, err := openNode(g)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	_, errs, code := run(t, dir, "db", "list")
	if code != 1 || !strings.Contains(errs, "data directory is in use") || strings.Contains(errs, "goroutine") {
		t.Fatalf("exit %d: %q", code, errs)
	}
}

func TestCLIBadConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	ok(t, dir, "init")
	os.WriteFile(filepath.Join(dir, configFile), []byte("name = \"x\"\nmax_value = \"lots\"\n"), 0o600)
	_, errs, code := run(t, dir, "db", "list")
	if code != 1 || !strings.Contains(errs, "eidefs.toml:2:1: max_value") {
		t.Fatalf("exit %d: %q", code, errs)
	}
	os.WriteFile(filepath.Join(dir, configFile), []byte("name = \"x\"\nlisten = [\n"), 0o600)
	_, errs, code = run(t, dir, "db", "list")
	if code != 1 || !strings.Contains(errs, "eidefs.toml:") {
		t.Fatalf("exit %d: %q", code, errs)
	}
	os.WriteFile(filepath.Join(dir, configFile), []byte("name = \"x\"\n\nlisen = []\n"), 0o600)
	_, errs, code = run(t, dir, "db", "list")
	if code != 1 || !strings.Contains(errs, `eidefs.toml:3:1: unknown key "lisen"`) {
		t.Fatalf("exit %d: %q", code, errs)
	}
}

func TestCLIConfigPrecedence(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a")
	ok(t, dir, "init")
	os.WriteFile(filepath.Join(dir, configFile), []byte("name = \"from-file\"\nlog_level = \"warn\"\n"), 0o600)
	cmd := exec.Command(eidefsBin, "--data", dir, "config")
	cmd.Env = append(os.Environ(), "EIDEFS_LOG_LEVEL=debug")
	b, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	for _, want := range []string{
		`name =                 "from-file"`, "# file " + filepath.Join(dir, configFile),
		`log_level =            "debug"`, "# environment EIDEFS_LOG_LEVEL",
		`sync.periodic =        "5m0s"`, "# default",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("eidefs config lacks %q:\n%s", want, out)
		}
	}
	cmd = exec.Command(eidefsBin, "--data", dir, "status")
	cmd.Env = append(os.Environ(), "EIDEFS_NAME=from-env")
	if b, err := cmd.Output(); err != nil || !strings.Contains(string(b), "name: from-env") {
		t.Errorf("EIDEFS_NAME not applied: %q %v", b, err)
	}
}

func TestCLICompletion(t *testing.T) {
	dir := t.TempDir()
	for shell, want := range map[string]string{"bash": "complete -o default -F __start_eidefs eidefs", "zsh": "#compdef eidefs", "fish": "complete -c eidefs"} {
		out, errs, code := run(t, dir, "completion", shell)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("eidefs completion %s: exit %d, %q…, stderr %q; want it to contain %q", shell, code, out[:min(len(out), 80)], errs, want)
		}
	}
}

// A bundle carries the blobs of large values: export from A, import on B, and B
// reads the same bytes. A bundle of the first format (entries only) still imports.
func TestBundleCarriesBlobs(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	ok(t, a, "init")
	ok(t, b, "init")
	ok(t, a, "db", "create", "notes")
	big := strings.Repeat("0123456789abcdef", 6_000) // 96,000 bytes: a blob
	ok(t, a, "set", "notes", "s", "big", big)
	ok(t, a, "set", "notes", "s", "small", "tiny")
	bundle := filepath.Join(t.TempDir(), "notes.bundle")
	if err := os.WriteFile(bundle, []byte(ok(t, a, "export", "notes")), 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, b, "import", bundle)
	if got := ok(t, b, "get", "notes", "s", "big"); got != big {
		t.Fatalf("B reads %d bytes of the big value, want %d", len(got), len(big))
	}
	if got := ok(t, b, "get", "notes", "s", "small"); got != "tiny" {
		t.Fatalf("B reads %q", got)
	}
	if files, _ := filepath.Glob(filepath.Join(b, blobDir, "??", "*")); len(files) != 1 {
		t.Fatalf("B's blob files: %v, want the big value's", files)
	}

	// The first format: the magic, then per entry a uvarint length and the bytes.
	c := filepath.Join(t.TempDir(), "c")
	ok(t, c, "init")
	ok(t, c, "db", "create", "old")
	ok(t, c, "set", "old", "s", "k", "v")
	raw := []byte(ok(t, c, "export", "old"))
	var v1 []byte
	v1 = append(v1, bundleMagicV1...)
	for rest := raw[len(bundleMagic):]; len(rest) > 0; {
		n, w := binary.Uvarint(rest[1:])
		v1 = append(v1, rest[1:1+w+int(n)]...)
		rest = rest[1+w+int(n):]
	}
	if err := os.WriteFile(bundle, v1, 0o600); err != nil {
		t.Fatal(err)
	}
	ok(t, b, "import", bundle)
	if got := ok(t, b, "get", "old", "s", "k"); got != "v" {
		t.Fatalf("after importing a first-format bundle: %q", got)
	}
}
