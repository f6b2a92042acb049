"""Operating the system locally: the `make up` / `make down` / `make classify` stack."""
