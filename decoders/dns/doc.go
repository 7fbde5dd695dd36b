// Package dns is interlockd's DNS proxy: it decides every question a tagged
// task asks, forwards the allowed ones to the host's resolvers and answers
// the rest REFUSED, so nothing the agent looks up leaves the host unless
// the policy allows that name (DESIGN.md: "DNS | a question | REFUSED").
//
// Proxy.Answer handles one query message whatever carried it; ServeStream
// frames DNS over TCP (RFC 1035 4.2.2) around it, and the daemon's UDP
// server hands it each datagram. A query is one question of class IN with
// opcode QUERY: anything else (several questions, updates, notifies,
// zone transfers) is refused before any resolver sees it, and only the
// question, the recursion-desired bit and the EDNS0 buffer size and DO bit
// are sent on: the agent's other sections and options, which could carry
// data, never leave the host. Malformed messages get FORMERR when their
// header can be read, and nothing otherwise.
//
// Like every decoder this package is pure Go: no logging, no kernel, no
// Vault. It returns what happened (Exchange) and the caller records it.
package dns
