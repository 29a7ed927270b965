// apiguard-echo: the test workload of the cluster tests. Standard library only, built static
// (CGO_ENABLED=0) for a FROM-scratch image that runs as a non-root user with a read-only root
// filesystem and no shell, so it is also its own client.
//
//	apiguard-echo serve [--listen :8080] [--tls-dir DIR]
//	apiguard-echo get URL [--tls-dir DIR] [--server-name NAME] [--timeout 5s] [--insecure] [-H 'Name: value']...
//	apiguard-echo connect HOST:PORT [--timeout 3s]
//
// serve answers every method and path with 200 and a JSON echo of the request. With --tls-dir
// it serves HTTPS with DIR/tls.crt and DIR/tls.key and requires a client certificate verified
// against DIR/ca.crt; the files are re-read when they change (Kubernetes Secret volumes swap
// them on renewal), checked at most once a second.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const maxBody = 64 << 10

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var code int
	switch os.Args[1] {
	case "serve":
		code = serve(os.Args[2:])
	case "get":
		code = get(os.Args[2:])
	case "connect":
		code = connect(os.Args[2:])
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "apiguard-echo: unknown subcommand %q\n", os.Args[1])
		usage()
	}
	os.Exit(code)
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  apiguard-echo serve [--listen :8080] [--tls-dir DIR]
  apiguard-echo get URL [--tls-dir DIR] [--server-name NAME] [--timeout 5s] [--insecure] [-H 'Name: value']...
  apiguard-echo connect HOST:PORT [--timeout 3s]
`)
	os.Exit(2)
}

// parseArgs parses flags that may come before or after the positional arguments
// (`get URL --timeout 1s` as well as `get --timeout 1s URL`).
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		if args[0] == "--" {
			return append(positional, args[1:]...), nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// --- TLS material, re-read on change ---------------------------------------------------------

// tlsFiles loads DIR/tls.crt, DIR/tls.key and DIR/ca.crt and reloads them when their content
// changes, checking at most once per second. A failed reload keeps the last good material.
type tlsFiles struct {
	dir string

	mu      sync.Mutex
	checked time.Time
	raw     [3][]byte
	cert    *tls.Certificate
	pool    *x509.CertPool
}

func (f *tlsFiles) paths() [3]string {
	return [3]string{
		filepath.Join(f.dir, "tls.crt"),
		filepath.Join(f.dir, "tls.key"),
		filepath.Join(f.dir, "ca.crt"),
	}
}

// load returns the current certificate and CA pool, re-reading the files if the last check is
// more than a second old and their content differs.
func (f *tlsFiles) load() (*tls.Certificate, *x509.CertPool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cert != nil && time.Since(f.checked) < time.Second {
		return f.cert, f.pool, nil
	}
	f.checked = time.Now()
	var raw [3][]byte
	var err error
	for i, p := range f.paths() {
		if raw[i], err = os.ReadFile(p); err != nil {
			return f.stale(err)
		}
	}
	if f.cert != nil && bytes.Equal(raw[0], f.raw[0]) && bytes.Equal(raw[1], f.raw[1]) && bytes.Equal(raw[2], f.raw[2]) {
		return f.cert, f.pool, nil
	}
	cert, err := tls.X509KeyPair(raw[0], raw[1])
	if err != nil {
		return f.stale(fmt.Errorf("%s: %w", f.dir, err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw[2]) {
		return f.stale(fmt.Errorf("%s: no CA certificate in ca.crt", f.dir))
	}
	if f.cert != nil {
		logJSON(map[string]any{"msg": "reloaded TLS material", "dir": f.dir})
	}
	f.raw, f.cert, f.pool = raw, &cert, pool
	return f.cert, f.pool, nil
}

// stale keeps serving the last good material (a symlink swap may be caught half-way).
func (f *tlsFiles) stale(err error) (*tls.Certificate, *x509.CertPool, error) {
	if f.cert == nil {
		return nil, nil, err
	}
	logJSON(map[string]any{"msg": "TLS reload failed, keeping the previous material", "error": err.Error()})
	return f.cert, f.pool, nil
}

func (f *tlsFiles) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool, err := f.load()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*cert},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    pool,
				NextProtos:   []string{"h2", "http/1.1"},
			}, nil
		},
	}
}

// --- serve -------------------------------------------------------------------------------------

type peerInfo struct {
	URIs []string `json:"uris"`
	DNS  []string `json:"dns"`
}

type echoReply struct {
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Query   string              `json:"query"`
	Host    string              `json:"host"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
	Remote  string              `json:"remote"`
	TLS     bool                `json:"tls"`
	Peer    *peerInfo           `json:"peer,omitempty"`
}

var logMu sync.Mutex

func logJSON(v map[string]any) {
	v["time"] = time.Now().UTC().Format(time.RFC3339Nano)
	line, _ := json.Marshal(v)
	logMu.Lock()
	defer logMu.Unlock()
	os.Stdout.Write(append(line, '\n'))
}

func echoHandler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxBody))
	headers := map[string][]string(r.Header.Clone())
	if headers == nil {
		headers = map[string][]string{}
	}
	reply := echoReply{
		Method:  r.Method,
		Path:    r.URL.Path,
		Query:   r.URL.RawQuery,
		Host:    r.Host,
		Headers: headers,
		Body:    string(body),
		Remote:  r.RemoteAddr,
		TLS:     r.TLS != nil,
	}
	peerURI := ""
	if r.TLS != nil {
		reply.Peer = &peerInfo{URIs: []string{}, DNS: []string{}}
		if len(r.TLS.PeerCertificates) > 0 {
			leaf := r.TLS.PeerCertificates[0]
			for _, u := range leaf.URIs {
				reply.Peer.URIs = append(reply.Peer.URIs, u.String())
			}
			reply.Peer.DNS = append(reply.Peer.DNS, leaf.DNSNames...)
			if len(reply.Peer.URIs) > 0 {
				peerURI = reply.Peer.URIs[0]
			}
		}
	}
	out, _ := json.Marshal(reply)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(append(out, '\n'))
	entry := map[string]any{"method": r.Method, "path": r.URL.Path, "status": http.StatusOK, "remote": r.RemoteAddr}
	if r.TLS != nil {
		entry["peer_uri"] = peerURI
	}
	logJSON(entry)
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "listen address")
	tlsDir := fs.String("tls-dir", "", "directory with tls.crt, tls.key and ca.crt: serve HTTPS and require a client certificate")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(rest) > 0 {
		fmt.Fprintf(os.Stderr, "serve: unexpected arguments %q\n", rest)
		return 2
	}

	srv := &http.Server{
		Handler:           http.HandlerFunc(echoHandler),
		ReadHeaderTimeout: 10 * time.Second,
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		return 1
	}
	if *tlsDir != "" {
		files := &tlsFiles{dir: *tlsDir}
		if _, _, err := files.load(); err != nil {
			fmt.Fprintf(os.Stderr, "serve: %v\n", err)
			ln.Close()
			return 1
		}
		srv.TLSConfig = files.serverConfig()
	}
	logJSON(map[string]any{"msg": "listening", "addr": ln.Addr().String(), "tls": *tlsDir != ""})

	errc := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			// ServeTLS sets up HTTP/2 (the per-connection config offers h2 and http/1.1).
			errc <- srv.ServeTLS(ln, "", "")
		} else {
			errc <- srv.Serve(ln)
		}
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errc:
		fmt.Fprintf(os.Stderr, "serve: %v\n", err)
		return 1
	case sig := <-sigs:
		logJSON(map[string]any{"msg": "shutting down", "signal": sig.String()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
	}
	return 0
}

// --- get ---------------------------------------------------------------------------------------

type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

func get(args []string) int {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	tlsDir := fs.String("tls-dir", "", "directory with tls.crt, tls.key (client certificate) and ca.crt (server CA)")
	serverName := fs.String("server-name", "", "TLS server name to verify (default: the URL's host)")
	timeout := fs.Duration("timeout", 5*time.Second, "overall timeout")
	insecure := fs.Bool("insecure", false, "do not verify the server certificate")
	var headers headerList
	fs.Var(&headers, "H", "request header 'Name: value' (repeatable)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(rest) != 1 {
		fmt.Fprintln(os.Stderr, "get: exactly one URL expected")
		return 2
	}

	tlsConf := &tls.Config{ServerName: *serverName, InsecureSkipVerify: *insecure}
	if *tlsDir != "" {
		files := &tlsFiles{dir: *tlsDir}
		cert, pool, err := files.load()
		if err != nil {
			fmt.Fprintf(os.Stderr, "get: %v\n", err)
			return 1
		}
		tlsConf.Certificates = []tls.Certificate{*cert}
		tlsConf.RootCAs = pool
	}
	transport := &http.Transport{
		Proxy:             nil, // the tests mean the address they give
		TLSClientConfig:   tlsConf,
		ForceAttemptHTTP2: true,
		DisableKeepAlives: true,
	}
	client := &http.Client{Transport: transport, Timeout: *timeout}

	req, err := http.NewRequest(http.MethodGet, rest[0], nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "get: %v\n", err)
		return 1
	}
	for _, h := range headers {
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			fmt.Fprintf(os.Stderr, "get: bad header %q (want 'Name: value')\n", h)
			return 2
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if strings.EqualFold(name, "Host") {
			req.Host = value
		} else {
			req.Header.Add(name, value)
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(os.Stderr, "get: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	fmt.Println(resp.StatusCode)
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		// A response arrived; a truncated body is still reported on stderr.
		fmt.Fprintf(os.Stderr, "get: reading the body: %v\n", err)
	}
	return 0
}

// --- connect -----------------------------------------------------------------------------------

func connect(args []string) int {
	fs := flag.NewFlagSet("connect", flag.ExitOnError)
	timeout := fs.Duration("timeout", 3*time.Second, "connect timeout")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return 2
	}
	if len(rest) != 1 {
		fmt.Fprintln(os.Stderr, "connect: exactly one HOST:PORT expected")
		return 2
	}
	conn, err := net.DialTimeout("tcp", rest[0], *timeout)
	if err != nil {
		var nerr net.Error
		if errors.As(err, &nerr) && nerr.Timeout() {
			fmt.Printf("timeout: %v\n", err)
		} else {
			fmt.Printf("error: %v\n", err)
		}
		return 1
	}
	conn.Close()
	fmt.Println("connected")
	return 0
}
