package pgrole

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// scramIterations is 1, not PostgreSQL's default of 4096. Iterations slow
// down guessing a password from its stored secret; these passwords are 256
// random bits (RandomPassword), which no guessing reaches at any count. Each
// iteration is paid twice per session, deriving the secret and again when
// the relay logs in with it: 4096 cost 28 % of interlockd's CPU per new
// PostgreSQL session (pgbench -C) and 0.6 ms of each login.
const scramIterations = 1

// scramVerifier computes the SCRAM-SHA-256 secret PostgreSQL stores for
// password (RFC 5802, 7677), which must come from RandomPassword. Sending the verifier instead of the password in
// CREATE ROLE keeps the password out of server logs and pg_stat_statements.
func scramVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	rand.Read(salt)
	salted, err := pbkdf2.Key(sha256.New, password, salt, scramIterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("derive scram key: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", scramIterations, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// RandomPassword returns 256 random bits, URL-safe base64 encoded: no
// quoting is ever needed and no client mangles it.
func RandomPassword() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
