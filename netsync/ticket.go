package netsync

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/eidefs/eidefs/engine"
)

// Ticket is what `eidefs db share` prints: enough for another machine to find the
// owner, prove who it is, and join the database.
type Ticket struct {
	DB     engine.ID        `cbor:"1,keyasint"`
	Name   string           `cbor:"2,keyasint"`
	Owner  engine.PublicKey `cbor:"3,keyasint"`
	Addrs  []string         `cbor:"4,keyasint"`
	Invite []byte           `cbor:"5,keyasint,omitempty"`
}

const ticketPrefix = "eidefs1:"

func (t Ticket) String() string {
	b, err := encMode.Marshal(&t)
	if err != nil {
		panic(err)
	}
	return ticketPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseTicket parses Ticket.String's form.
func ParseTicket(s string) (Ticket, error) {
	var t Ticket
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), ticketPrefix)
	if !ok {
		return t, fmt.Errorf("not an eidefs ticket (want %s…)", ticketPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return t, fmt.Errorf("bad ticket: %v", err)
	}
	if err := decMode.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("bad ticket: %v", err)
	}
	if len(t.Addrs) == 0 {
		return t, fmt.Errorf("bad ticket: no addresses")
	}
	return t, nil
}
