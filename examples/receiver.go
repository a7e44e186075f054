// A palo-webhooks receiver in Go, standard library only (Go 1.19 or later), in one file.
// The same receiver as examples/receiver.py.
//
//	PALO_WEBHOOK_SECRET=<the webhook's secret> go run examples/receiver.go --port 9000
//
// Every check is over the raw body bytes, before parsing them:
//   - X-Palo-Signature: sha256=<hex HMAC-SHA256 of the body> (the spec's signature);
//   - the Standard Webhooks webhook-signature: one "v1,<base64 HMAC-SHA256 of
//     <webhook-id>.<webhook-timestamp>.<body>>" entry must match ("v1a," Ed25519 entries are
//     skipped);
//   - webhook-timestamp (Unix seconds) within 5 minutes of now, so a captured request
//     cannot be replayed later.
//
// Both HMACs are keyed with the UTF-8 bytes of the webhook's secret, and compared in
// constant time (hmac.Equal). During a secret rotation, give both secrets, comma-separated
// (--secret new,old): a signature that verifies with either is accepted.
//
// Then it answers 200 at once and deduplicates on event_id (deliveries are at-least-once).
// Prints one line per request: "verified", "duplicate" or "rejected: <reason>", then the
// event's data for a new event.
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// How far webhook-timestamp may be from now, either way.
const tolerance = 5 * time.Minute

type receiver struct {
	secrets []string // the current secret, and the previous one during a rotation

	mu   sync.Mutex
	seen map[string]bool // event_ids already processed; a real receiver keeps these in its database
}

func hmacSHA256(secret string, parts ...[]byte) []byte {
	mac := hmac.New(sha256.New, []byte(secret))
	for _, part := range parts {
		mac.Write(part)
	}
	return mac.Sum(nil)
}

// refusal says why a request is not a genuine, fresh delivery; "" when it is.
func (rc *receiver) refusal(h http.Header, body []byte) string {
	signature, id := h.Get("X-Palo-Signature"), h.Get("webhook-id")
	timestamp, standard := h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if signature == "" || id == "" || timestamp == "" || standard == "" {
		return "missing headers"
	}
	seconds, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return "bad timestamp"
	}
	if age := time.Since(time.Unix(seconds, 0)); age > tolerance || age < -tolerance {
		return "stale timestamp" // a replay (or a clock far off)
	}
	paloOK, standardOK := false, false
	signed := []byte(id + "." + timestamp + ".")
	for _, secret := range rc.secrets {
		expected := "sha256=" + hex.EncodeToString(hmacSHA256(secret, body))
		paloOK = paloOK || hmac.Equal([]byte(expected), []byte(signature))
		v1 := base64.StdEncoding.EncodeToString(hmacSHA256(secret, signed, body))
		for _, entry := range strings.Split(standard, " ") {
			if version, sig, _ := strings.Cut(entry, ","); version == "v1" {
				standardOK = standardOK || hmac.Equal([]byte(v1), []byte(sig))
			}
		}
	}
	if !paloOK {
		return "bad signature"
	}
	if !standardOK {
		return "bad webhook-signature"
	}
	return ""
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(r.Body) // the raw bytes: the signatures cover exactly these
	if err != nil {
		http.Error(w, "unreadable body", http.StatusBadRequest)
		return
	}
	var event struct {
		EventID   string          `json:"event_id"`
		EventType string          `json:"event_type"`
		Data      json.RawMessage `json:"data"`
	}
	reason := rc.refusal(r.Header, body)
	if reason == "" && (json.Unmarshal(body, &event) != nil || event.EventID == "") {
		reason = "bad payload"
	}
	if reason != "" {
		http.Error(w, "rejected", http.StatusUnauthorized)
		fmt.Printf("rejected: %s\n", reason)
		return
	}
	rc.mu.Lock()
	duplicate := rc.seen[event.EventID]
	rc.seen[event.EventID] = true
	rc.mu.Unlock()

	// Answer first, process after (the spec asks for < 5 s): flush the 200 out now.
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, "ok")
	if flusher, ok := w.(http.Flusher); ok {
		flusher.Flush()
	}

	status := "verified"
	if duplicate {
		status = "duplicate"
	}
	fmt.Printf("%s %s %s delivery=%s attempt=%s\n", status, event.EventType, event.EventID,
		r.Header.Get("X-Palo-Delivery"), r.Header.Get("X-Palo-Attempt"))
	if !duplicate {
		var data bytes.Buffer
		if json.Compact(&data, event.Data) != nil {
			data.WriteString("null")
		}
		fmt.Println(data.String())
	}
}

func main() {
	port := flag.Int("port", 9000, "port on 127.0.0.1 (0 picks a free one)")
	secret := flag.String("secret", os.Getenv("PALO_WEBHOOK_SECRET"),
		"the webhook's secret, or several comma-separated during a rotation (or PALO_WEBHOOK_SECRET)")
	flag.Parse()
	rc := &receiver{seen: map[string]bool{}}
	for _, s := range strings.Split(*secret, ",") {
		if s != "" {
			rc.secrets = append(rc.secrets, s)
		}
	}
	if len(rc.secrets) == 0 {
		log.Fatal("set PALO_WEBHOOK_SECRET (or --secret) to the webhook's secret")
	}
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		log.Fatal(err)
	}
	// os.Stdout is unbuffered in Go: the line is out at once.
	fmt.Printf("receiver listening on http://127.0.0.1:%d/webhook\n", listener.Addr().(*net.TCPAddr).Port)
	server := &http.Server{Handler: rc, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(server.Serve(listener))
}
