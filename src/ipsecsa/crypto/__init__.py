"""ipsecsa.crypto"""
