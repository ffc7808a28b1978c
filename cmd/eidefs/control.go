package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// While a mount runs it holds the data directory, so other eidefs commands on the
// same data directory are run by it: the CLI sends its arguments (and stdin, where
// a command reads it) over a unix socket in the data directory, and the running
// process executes the same command tree against its open node.

const controlSocket = "control.sock"

type ctlRequest struct {
	Args  []string `json:"args"`
	Stdin []byte   `json:"stdin,omitempty"`
}

type ctlResponse struct {
	Stdout []byte `json:"stdout"`
	Stderr string `json:"stderr"`
	Code   int    `json:"code"`
}

type controlServer struct {
	ln   net.Listener
	path string
	wg   sync.WaitGroup
}

func serveControl(n *node, log *slog.Logger) (*controlServer, error) {
	path := filepath.Join(n.dir, controlSocket)
	os.Remove(path) // left by a process that died; we hold the data dir lock
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	os.Chmod(path, 0o600)
	s := &controlServer{ln: ln, path: path}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer conn.Close()
				if err := handleControl(n, conn); err != nil {
					log.Warn("control request", "err", err)
				}
			}()
		}
	}()
	return s, nil
}

func (s *controlServer) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	os.Remove(s.path)
	return err
}

func handleControl(n *node, conn net.Conn) error {
	var req ctlRequest
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
		return err
	}
	var out, errb bytes.Buffer
	root := newRootCmdWith(&globals{node: n})
	root.SetArgs(req.Args)
	root.SetIn(bytes.NewReader(req.Stdin))
	root.SetOut(&out)
	root.SetErr(&errb)
	code := 0
	if err := root.Execute(); err != nil {
		fmt.Fprintln(&errb, "eidefs:", userMessage(err))
		code = exitCode(err)
	}
	return json.NewEncoder(conn).Encode(ctlResponse{Stdout: out.Bytes(), Stderr: errb.String(), Code: code})
}

// localOnly are the commands that never go to a running node.
var localOnly = []string{"init", "mount", "serve", "config", "completion", "help", "__complete"}

// forward runs args on the node serving the data directory, if one is running.
// It reports false when there is none (or args must run here).
func forward(args []string) (int, bool) {
	g := &globals{}
	var cmdName string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--data" && i+1 < len(args):
			g.data = args[i+1]
			i++
		case strings.HasPrefix(a, "--data="):
			g.data = strings.TrimPrefix(a, "--data=")
		case strings.HasPrefix(a, "-"):
		case cmdName == "":
			cmdName = a
		}
	}
	if cmdName == "" || slices.Contains(localOnly, cmdName) {
		return 0, false
	}
	conn, err := net.Dial("unix", filepath.Join(g.dataDir(), controlSocket))
	if err != nil {
		return 0, false
	}
	defer conn.Close()
	if cmdName == "umount" {
		conn.SetDeadline(time.Now().Add(umountAnswer))
	}
	req := ctlRequest{Args: args}
	// Commands that read stdin or a file get the bytes sent along: the running
	// node has another working directory and no terminal.
	if cmdName == "import" && len(args) > 0 && args[len(args)-1] != "-" {
		b, err := os.ReadFile(args[len(args)-1])
		if err != nil {
			fmt.Fprintln(os.Stderr, "eidefs:", err)
			return 1, true
		}
		req.Args = append(slices.Clone(args[:len(args)-1]), "-")
		req.Stdin = b
	} else if slices.Contains(args, "-") {
		req.Stdin, _ = io.ReadAll(os.Stdin)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		fmt.Fprintln(os.Stderr, "eidefs: talking to the running node:", err)
		return 1, true
	}
	var resp ctlResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		if cmdName == "umount" && errors.Is(err, os.ErrDeadlineExceeded) {
			nodeHung = true // the command, run here, aborts the mount
			return 0, false
		}
		if errors.Is(err, io.EOF) {
			err = errors.New("it closed the connection")
		}
		fmt.Fprintln(os.Stderr, "eidefs: talking to the running node:", err)
		return 1, true
	}
	os.Stdout.Write(resp.Stdout)
	os.Stderr.WriteString(resp.Stderr)
	return resp.Code, true
}
