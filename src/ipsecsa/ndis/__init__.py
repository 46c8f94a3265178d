"""ipsecsa.ndis"""
