"""Serving trained patches: the multi-task engine (`engine`: many task patches over one frozen backbone), the HTTP
server (`server`), predictions on files (`predict`) and standalone model folders (`export`)."""
