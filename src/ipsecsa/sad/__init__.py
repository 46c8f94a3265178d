"""ipsecsa.sad"""
