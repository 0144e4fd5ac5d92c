"""What the merchant's and the coordinator's consoles share: sign-in, security headers, the server, the look."""
