package postgres

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
)

// scramClient is the client side of SCRAM-SHA-256 (RFC 5802, RFC 7677)
// without channel binding, as PostgreSQL uses it: the user name is taken from
// the startup message, so the SASL user is empty.
type scramClient struct {
	password    string
	clientNonce string
	firstBare   string
	serverSig   []byte
}

func newScramClient(password string) (*scramClient, error) {
	nonce := make([]byte, 18)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("generate scram nonce: %w", err)
	}
	return &scramClient{password: password, clientNonce: base64.RawStdEncoding.EncodeToString(nonce)}, nil
}

// first returns client-first-message.
func (c *scramClient) first() []byte {
	c.firstBare = "n=,r=" + c.clientNonce
	return []byte("n,," + c.firstBare)
}

// final consumes server-first-message and returns client-final-message.
func (c *scramClient) final(serverFirst []byte) ([]byte, error) {
	var nonce, salt []byte
	iterations := 0
	for _, attr := range bytes.Split(serverFirst, []byte(",")) {
		if len(attr) < 2 || attr[1] != '=' {
			return nil, errors.New("malformed scram server-first-message")
		}
		v := attr[2:]
		switch attr[0] {
		case 'r':
			nonce = v
		case 's':
			s, err := base64.StdEncoding.DecodeString(string(v))
			if err != nil {
				return nil, fmt.Errorf("decode scram salt: %w", err)
			}
			salt = s
		case 'i':
			n, err := strconv.Atoi(string(v))
			if err != nil || n < 1 || n > 1<<20 {
				return nil, errors.New("invalid scram iteration count")
			}
			iterations = n
		}
	}
	if !bytes.HasPrefix(nonce, []byte(c.clientNonce)) || len(nonce) == len(c.clientNonce) || salt == nil || iterations == 0 {
		return nil, errors.New("invalid scram server-first-message")
	}
	salted, err := pbkdf2.Key(sha256.New, c.password, salt, iterations, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("derive scram key: %w", err)
	}
	finalNoProof := "c=biws,r=" + string(nonce)
	authMessage := c.firstBare + "," + string(serverFirst) + "," + finalNoProof
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	storedKey := sha256.Sum256(clientKey)
	clientSig := hmacSHA256(storedKey[:], []byte(authMessage))
	proof := make([]byte, len(clientKey))
	for i := range clientKey {
		proof[i] = clientKey[i] ^ clientSig[i]
	}
	serverKey := hmacSHA256(salted, []byte("Server Key"))
	c.serverSig = hmacSHA256(serverKey, []byte(authMessage))
	return []byte(finalNoProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// verify checks server-final-message, proving the server knew the password.
func (c *scramClient) verify(serverFinal []byte) error {
	v, ok := bytes.CutPrefix(serverFinal, []byte("v="))
	if !ok {
		return errors.New("malformed scram server-final-message")
	}
	sig, err := base64.StdEncoding.DecodeString(string(v))
	if err != nil || !hmac.Equal(sig, c.serverSig) {
		return errors.New("scram server signature mismatch")
	}
	return nil
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
